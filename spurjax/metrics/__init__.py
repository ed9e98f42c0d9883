from spurjax.metrics.groups import format_split, group_counts, group_metrics, markdown_table

__all__ = ["format_split", "group_counts", "group_metrics", "markdown_table"]
