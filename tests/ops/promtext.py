"""Reading Prometheus text in tests: every sample by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, frozenset[tuple[str, str]]]


class Samples:
    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[Key, float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, default: float | None = None, **labels: str) -> float:
        value = self.values.get((name, frozenset(labels.items())), default)
        if value is None:
            raise KeyError(f"no sample {name}{labels} in the exposition")
        return value

    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.values.items() if n == name}
