"""Campaigns: paired multi-seed experiments (models × seeds × recipes), on one machine or a cluster.

A spec (``CampaignSpec``, YAML) expands into one job per (model, seed, recipe, budget); ``run_one``
trains a job into its own folder and writes its record; an executor (``local``, ``ray``, ``slurm``)
maps ``run_one`` over the jobs; ``results.csv`` and the report are rebuilt from the records.
"""

from .executors import EXECUTORS, Executor, get_executor, register_executor
from .runner import RunJob, campaign_status, plan_jobs, run_campaign, run_one
from .spec import CampaignSpec, EvalSuiteConfig, ExecutorConfig, ModelSpec, RecipeSpec, load_campaign, load_spec

__all__ = ["EXECUTORS", "CampaignSpec", "EvalSuiteConfig", "Executor", "ExecutorConfig", "ModelSpec", "RecipeSpec",
           "RunJob", "campaign_status", "get_executor", "load_campaign", "load_spec", "plan_jobs",
           "register_executor", "run_campaign", "run_one"]
