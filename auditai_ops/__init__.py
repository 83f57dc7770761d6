"""AuditAI-Ops: verified semantic unit tests for deep-learning models.

Public entry points, one per pipeline step (each reads and writes files under an output
folder, and each is one `auditai` subcommand):

- `auditai_ops.latent.mapping.map_latents`
- `auditai_ops.directions.discover.discover_directions`
- `auditai_ops.classifier.head.train_classifier`
- `auditai_ops.verify.step.verify_audit`

Configuration: `auditai_ops.config.load_config`. Importing this package is cheap: it
imports neither torch nor any orchestrator.
"""

from importlib import metadata

try:
    __version__ = metadata.version("auditai-ops")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
