"""Tests of the jobs (fathom_jobs): store, grading, datasets, engines, rewards, every stage type, the job entry."""
