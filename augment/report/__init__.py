"""Reports: retraining comparison, figures and sample sheets."""
