//! wise-ensemble (work in progress).
