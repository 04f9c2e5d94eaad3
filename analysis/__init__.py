"""The study's analysis: read the downstream runs back from MLflow and turn them into the paper's figures and tables.

Everything here reads the tracking store only (never local result files) and writes its outputs both into an
output folder and as artifacts of one `analysis` run: `python -m analysis.report --study ID --output DIR`.
"""
