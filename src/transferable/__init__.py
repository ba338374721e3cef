"""transferable: reproduce Yosinski et al. (2014), "How transferable are features in deep neural networks?"."""

__version__ = "0.1.0"
