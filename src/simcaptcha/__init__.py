"""simcaptcha: learn to read a captcha scheme from unlabelled real images and synthetic fonts."""

__version__ = "0.1.0"
