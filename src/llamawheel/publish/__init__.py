"""The publish stage: the private PEP 503 index per variant (`index`, `index_pages`), its check
(`index_check`), carrying it elsewhere (`share`: bundle, serve, upload) and the dependency closure
its wheels need (`closure`)."""
