"""Pure decoders: bytes or frames in, typed values out. No I/O."""
