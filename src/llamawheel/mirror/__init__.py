"""The mirror stage: where pip, apt and image pulls fetch from (`profiles`), whether those
places answer (`probe`), and hash-pinned downloads through pip (`pipfetch`)."""
