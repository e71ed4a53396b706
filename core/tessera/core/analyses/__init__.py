"""Analyses: each module holds both halves — what a node computes locally and what the coordinator
does with the nodes' answers. New analyses are added here and registered in ``registry``."""
