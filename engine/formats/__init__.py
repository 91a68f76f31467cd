"""Readers and writers of foreign file formats as in-memory xarray datasets (no lake, no dask).

Ingest commands stream these readers into the lake; export commands call the writers.
"""
