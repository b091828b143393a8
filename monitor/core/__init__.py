"""The plain types every layer shares (runs, series, findings, actions, the metric and recipe
registries). It imports nothing of the project, so config, storage, detection, rules, reports and the
service can all depend on it and on nothing above themselves."""
