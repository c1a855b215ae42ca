"""Topics created for a replicated cluster require two in-sync copies per acknowledged write."""

from __future__ import annotations

from typing import Any

from streams.kafka.topics import TopicSpec, durability_configs, ensure_topics


class RecordingAdmin:
    """kafka-python's admin reduced to what ensure_topics calls; remembers the topics it was asked for."""

    def __init__(self) -> None:
        """No topic exists yet."""
        self.created: list[Any] = []

    def list_topics(self) -> list[str]:
        """The topics created so far."""
        return [t.name for t in self.created]

    def create_topics(self, new: list[Any], validate_only: bool = False) -> None:
        """Keep the requests."""
        self.created += new

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        """Each created topic with its partitions."""
        return [{"name": t.name, "partitions": list(range(t.num_partitions))} for t in self.created if t.name in names]


def test_three_copies_require_two_in_sync_and_one_copy_requires_nothing() -> None:
    """min.insync.replicas is 2 from a replication factor of 3, and not set below."""
    assert durability_configs(3) == durability_configs(5) == {"min.insync.replicas": "2"}
    assert durability_configs(1) == durability_configs(2) == {}


def test_new_topics_get_the_durability_setting_unless_their_spec_names_one() -> None:
    """ensure_topics adds min.insync.replicas to every new topic; a spec's own value wins."""
    admin = RecordingAdmin()
    specs = [TopicSpec("a", 6, {"retention.ms": "1"}), TopicSpec("b", 3, {"min.insync.replicas": "3"})]
    assert ensure_topics(admin, specs, replication=3) == {"a": 6, "b": 3}  # type: ignore[arg-type]
    configs = {t.name: t.topic_configs for t in admin.created}
    assert configs == {"a": {"min.insync.replicas": "2", "retention.ms": "1"}, "b": {"min.insync.replicas": "3"}}
