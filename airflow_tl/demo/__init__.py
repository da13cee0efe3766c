"""The demo: local S3, digits 0–4 → 5–9 data, and a source model pretrained on 0–4."""
