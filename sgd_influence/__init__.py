"""SGD-influence (Hara et al., 2019) and its storage-efficient variant (Suzuki et al., 2021):
training with a trace, the estimators, counterfactual retraining and analysis."""
