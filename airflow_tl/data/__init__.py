"""Data: image preprocessing and S3 image datasets."""
