"""Pretrained weights from S3 model folders, torchvision's catalogue and torch-hub-style URLs."""
