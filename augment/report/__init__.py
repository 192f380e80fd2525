"""Rendering only: pages (md/html), figures, paired statistics, the retrain report's page, insertion sheets."""
