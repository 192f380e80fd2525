"""Multi-step orchestration over the layers below: retraining, the demo, the experiment's stages, the benchmark."""
