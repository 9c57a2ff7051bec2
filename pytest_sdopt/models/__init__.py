"""Where pipelines come from: the embedded `tiny`, `sd15-random`, folders and hub ids; the SD 1.5
architecture; the scenes the embedded model draws."""
