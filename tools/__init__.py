"""Code that tests/ and bench/ both use, and the project's scripts: a package so that
`from tools import corpus` finds this folder before any `tools` installed elsewhere.

It may import smallcnn; it imports neither tests/ nor bench/ (they import it).
"""
