"""Files the stages share, without Beam pipelines: the published-run rule, TFRecord and Parquet
files read and written whole, where the scrape stage's tables are, and watch-history files."""
