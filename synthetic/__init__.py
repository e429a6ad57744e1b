"""A deterministic synthetic poster web for tests, benchmarks and the local demo.

`synthetic.catalog` invents films, posters (with planted duplicates) and watch
histories; `synthetic.posters` draws genre-bearing posters; `synthetic.web`
serves them from 127.0.0.1 the way TMDb and IMDb do, with injectable faults.
"""
