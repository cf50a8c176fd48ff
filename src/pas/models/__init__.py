"""Models every later phase loads: the registry that resolves and pins them (stage `models`), generator presets,
tiny random-weight builders, the CLIP encoder and the text embedders."""
