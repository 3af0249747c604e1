"""The bundled datasets: real data shipped inside the wheels of dependencies, no download."""

from __future__ import annotations

import numpy as np
import torch

from zoo.datasets.dataset import Dataset, register


def _iris(columns: slice, name: str, description: str) -> Dataset:
    from sklearn.datasets import load_iris

    iris = load_iris()
    return Dataset(
        name=name,
        data=torch.as_tensor(iris.data[:, columns], dtype=torch.get_default_dtype()),
        description=description,
        source="scikit-learn sklearn.datasets.load_iris (Fisher 1936, UCI Iris), shipped inside the wheel",
        feature_names=[n.replace(" (cm)", "_cm").replace(" ", "_") for n in iris.feature_names[columns]],
        labels=np.asarray(iris.target),
        label_names=list(iris.target_names),
    )


@register("iris-petals", "Iris petal length and width (cm), 150 x 2, bundled with scikit-learn")
def _iris_petals(data_dir=None) -> Dataset:
    # Three species form three groups in the petal plane (setosa far apart, versicolor and
    # virginica touching): a real, small, 2-D mixture whose clusters can be plotted and scored
    # against the species labels. Default for the GMM.
    return _iris(slice(2, 4), "iris-petals", "Iris petal length and width (cm), 150 flowers of 3 species")


@register("iris", "Iris, all four measurements (cm), 150 x 4, bundled with scikit-learn")
def _iris_all(data_dir=None) -> Dataset:
    return _iris(slice(0, 4), "iris", "Iris sepal and petal length and width (cm), 150 flowers of 3 species")


@register("wine", "Wine chemistry, 13 measurements standardized, 178 x 13, bundled with scikit-learn")
def _wine(data_dir=None) -> Dataset:
    # Thirteen chemical measurements of 178 wines from three cultivars (Forina et al., UCI Wine), in
    # very different units: proline is in the hundreds to thousands, hue around 1. Standardized (zero
    # mean, unit variance with 1/N), so PCA works on the correlation matrix; raw, proline alone would
    # be the first component, and PPCA's isotropic noise assumes comparable scales. Small and real,
    # with clear low-dimensional structure (the first two components separate the cultivars). Default
    # for PPCA.
    from sklearn.datasets import load_wine

    wine = load_wine()
    x = np.asarray(wine.data, dtype=np.float64)
    x = (x - x.mean(0)) / x.std(0)
    return Dataset(
        name="wine",
        data=torch.as_tensor(x, dtype=torch.get_default_dtype()),
        description="Wine: 13 chemical measurements of 178 wines from 3 cultivars, standardized (z-scores, 1/N)",
        source="scikit-learn sklearn.datasets.load_wine (Forina et al., UCI Wine), shipped inside the wheel",
        feature_names=[n.replace("od280/od315_of_diluted_wines", "od280_od315") for n in wine.feature_names],
        labels=np.asarray(wine.target),
        label_names=[f"cultivar {i + 1}" for i in range(3)],
        meta={"raw_mean": wine.data.mean(0).tolist(), "raw_std": wine.data.std(0).tolist()},
    )


@register("goog-returns", "Google daily log-returns (%), 1046 trading days 2004-2008, bundled with matplotlib")
def _goog_returns(data_dir=None) -> Dataset:
    # A real series with visible regimes (calm 2004-2007, turbulent 2008) for a 2-state Gaussian HMM
    # (volatility switching, as in Hamilton 1989): the HMM's default. The file ships inside the
    # matplotlib wheel (mpl-data/sample_data), a runtime dependency, so it needs no download.
    from matplotlib import cbook

    prices = cbook.get_sample_data("goog.npz")["price_data"]
    if len(prices) != 1047 or str(prices["date"][0]) != "2004-08-19":
        raise ValueError("data: matplotlib's sample_data/goog.npz is not the expected series "
                         "(1047 days from 2004-08-19); this matplotlib version ships different sample data")
    returns = 100 * np.diff(np.log(prices["adj_close"]))
    return Dataset(
        name="goog-returns",
        data=torch.as_tensor(returns[:, None], dtype=torch.get_default_dtype()),
        description="daily log-returns (%) of Google's adjusted close, 2004-08-20 to 2008-10-14 (1046 days)",
        source="matplotlib mpl-data/sample_data/goog.npz (Yahoo! Finance GOOG prices), shipped inside the wheel",
        feature_names=["log_return_pct"],
        meta={"dates": prices["date"][1:]},
    )
