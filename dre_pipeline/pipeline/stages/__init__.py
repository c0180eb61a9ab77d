"""Each stage: config in, artifact out, one plain loop in between (nanoGPT style)."""
