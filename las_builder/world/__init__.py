"""The offline world: a generated, served stand-in for the public catalogs."""
