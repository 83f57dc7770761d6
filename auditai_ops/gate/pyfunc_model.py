"""The registered model as an MLflow pyfunc, defined by code: nothing is pickled.

MLflow runs this file when the model is loaded (`mlflow.pyfunc.load_model`); it rebuilds
the audited classifier from the packaged safetensors and json files
(auditai_ops.gate.package). `predict` takes images (N, C, H, W) in [0, 1] ((N, H, W) for grayscale) and
returns the predicted classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext

from auditai_ops.gate.package import load_packaged_classifier, predict_classes


class AuditedClassifier(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        self.classifier = load_packaged_classifier(Path(context.artifacts["audit"]))

    def predict(self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        return predict_classes(self.classifier, model_input)


mlflow.models.set_model(AuditedClassifier())
