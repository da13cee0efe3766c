"""Features of a frozen pretrained network, cached in S3 by content."""
