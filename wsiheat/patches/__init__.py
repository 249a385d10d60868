"""Windows at several magnifications: sampling, the HDF5 patches store, extract, import, IDC and mosaics."""
