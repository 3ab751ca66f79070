"""lens_model: laws, fitting, phase detection, selectors, calibration, NTK maths."""
