"""Kafka at the edge: the transactional runner, dispatch, topic specs, offsets and lag, publishing, the ACL plan.

May import: the pure core (contracts, domain, policy, pipeline), assembly, settings, errors.
"""
