"""Look inside a ViT: attention weights, relative position bias, patches, attention on the image, patch
features in colour (PCA), and a training run's curves, confusion matrix and mistakes. Numbers in, figures out: the attention maths is in
:mod:`vitkit.attention_maps`, the command in :mod:`vitkit.commands.visualize`.

Every plotting function returns a matplotlib ``Figure`` and writes it when given ``save_path``. Figures are
built with ``matplotlib.figure.Figure`` on an Agg canvas, never through ``pyplot``: nothing opens a window,
nothing is kept alive in pyplot's global figure list, and matplotlib is imported only when a plot is drawn
(``import vitkit`` does not import it).

Tensors are accepted as they come out of the model: attention (N, N), (H, N, N) or (B, H, N, N), a bias
(H, N, N), a bias table (num_positions, H); torch tensors or NumPy arrays.
"""

from .canvas import as_numpy, grid_shape, imshow, new_figure, save_figure, subplots, to_display
from .features import dense_features, feature_pca, visualize_feature_pca
from .images import (exploded_patches, image_patches, overlay, upsample_map, visualize_attention_grid,
                     visualize_attention_on_image, visualize_patches)
from .matrices import (bias_table_views, visualize_attention_weights, visualize_bias_table,
                       visualize_relative_position_bias)
from .runs import (confusion_matrix, mistakes_figure, most_confident_mistakes, plot_confusion_matrix, plot_image_grid,
                   plot_mistakes, plot_training_curves, read_metrics)

__all__ = ["as_numpy", "bias_table_views", "confusion_matrix", "dense_features", "exploded_patches", "feature_pca", "grid_shape", "image_patches", "imshow", "mistakes_figure", "most_confident_mistakes", "new_figure", "overlay", "plot_confusion_matrix", "plot_image_grid", "plot_mistakes", "plot_training_curves", "read_metrics", "save_figure", "subplots", "to_display", "upsample_map", "visualize_attention_grid", "visualize_attention_on_image", "visualize_attention_weights", "visualize_bias_table", "visualize_feature_pca", "visualize_patches", "visualize_relative_position_bias"]
