"""The pure decision core: data model, estimators, cost model, policies (stdlib + numpy only)."""
