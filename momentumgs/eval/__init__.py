"""Evaluation of a trained model on a scene's views: `measure` (render each view, PSNR/SSIM/LPIPS raw and
colour-corrected, speed, memory), `results` (the result and its files) and `appearance` (the test-time
appearance protocols). Import the modules, not this package."""
