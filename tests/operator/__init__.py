"""Tests of the operator (fathom_operator): validate, plan, render, CRD, cost, metrics, store reader, CLI, kmock."""
