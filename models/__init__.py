"""nn.Modules only: TinyBeauty, RDM, FGMM and the tiny offline SD builder. Nothing runs on import."""
