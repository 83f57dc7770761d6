import subprocess
import sys


def test_library_never_imports_orchestrators() -> None:
    code = "import auditai_ops, auditai_ops.cli.main, sys; assert 'kfp' not in sys.modules and 'airflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_help_is_cheap() -> None:
    """`auditai --help` must not import torch-heavy verification code paths it does not need."""
    result = subprocess.run([sys.executable, "-m", "auditai_ops", "--help"], capture_output=True, text=True, check=True)
    for command in ("map-latents", "discover-directions", "train-classifier", "verify", "run"):
        assert command in result.stdout
