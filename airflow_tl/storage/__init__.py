"""Object storage: S3 access with errors that name the URI."""
