"""End-to-end tests: the whole recipe run locally, the chart, the images, the Argo CD health check (marked e2e)."""
