// binning: being written
