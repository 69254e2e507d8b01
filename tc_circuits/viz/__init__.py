"""Views: plotly attribution-graph figures, feature dashboards and self-contained HTML pages.

plotly is imported only inside this package.
"""

from tc_circuits.viz.dashboard_html import dashboard_figure, dashboard_html
from tc_circuits.viz.dashboards import (
    ContextExample,
    DashboardConfig,
    FeatureDashboard,
    compute_dashboards,
    weight_dashboard,
)
from tc_circuits.viz.feature_stats import ActivationStats, StreamConfig, stream_activation_stats
from tc_circuits.viz.feature_weights import connections, de_embeddings, direct_logit_effects, promoted_tokens
from tc_circuits.viz.graph_view import GraphViewConfig, graph_figure, write_figure_html
from tc_circuits.viz.interactive import GraphView, graph_view, prompt_set_view, write_image
from tc_circuits.viz.html_page import graph_latents, graph_page_html, write_graph_page
from tc_circuits.viz.supernodes import auto_supernodes, group_nodes, view_graph

__all__ = [
    "ActivationStats",
    "ContextExample",
    "DashboardConfig",
    "FeatureDashboard",
    "GraphView",
    "GraphViewConfig",
    "StreamConfig",
    "auto_supernodes",
    "compute_dashboards",
    "connections",
    "dashboard_figure",
    "dashboard_html",
    "de_embeddings",
    "direct_logit_effects",
    "graph_figure",
    "graph_latents",
    "graph_view",
    "graph_page_html",
    "group_nodes",
    "promoted_tokens",
    "prompt_set_view",
    "stream_activation_stats",
    "view_graph",
    "weight_dashboard",
    "write_figure_html",
    "write_graph_page",
    "write_image",
]
