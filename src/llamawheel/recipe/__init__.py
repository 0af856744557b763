"""The recipe stage: what to build, as validated data. Recipes (`catalog`, from ``recipes/*.toml``
layered on ``recipes/defaults.toml``), GPU architectures (`archs`), the variant label a build carries
(`variant`) and the CI matrix (`matrix`)."""
