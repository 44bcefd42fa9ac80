"""rhd-pipeline: streaming services that turn echo studies into RHD diagnosis suggestions."""

__version__ = "0.1.0"
