"""KFP v2 components: one thin `@dsl.component` per `auditai_ops` step (see README.md)."""
