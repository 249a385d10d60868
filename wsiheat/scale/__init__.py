"""Scale out: many slides in this process or on a Dask cluster (extract, heatmap), resumable."""
