"""Compiler passes: one pass per file, named by what it does."""
