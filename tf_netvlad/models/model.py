"""NetVLADModel: images -> preprocessing -> backbone -> NetVLAD -> (whitening) -> descriptor."""

import copy

import keras

from tf_netvlad.data.image_size import format_image_size, parse_image_size
from tf_netvlad.defaults import DEFAULT_VARIANT, MARGIN, NUM_CLUSTERS
from tf_netvlad.layers.netvlad import NetVLAD
from tf_netvlad.layers.preprocessing import ImagePreprocessing
from tf_netvlad.layers.whitening import PCAWhitening
from tf_netvlad.models import backbones as backbones_lib
from tf_netvlad.models import losses, streams

# `sparse_backward`: the step back-propagates only through the images that train while fewer than
# this fraction of the cycle's negatives violate the margin. The CPU recipe's step (32 images) was
# faster sparse up to about 70 % violating and 15-20 % slower at 100 % (benchmarks/RESULTS.md).
SPARSE_MAX_VIOLATING = 0.6


def _as_preprocessing(preprocessing):
    if isinstance(preprocessing, ImagePreprocessing):
        return preprocessing
    if isinstance(preprocessing, str):
        return ImagePreprocessing.from_preset(preprocessing, name="preprocessing")
    if isinstance(preprocessing, dict):
        return keras.layers.deserialize(preprocessing)
    raise ValueError(
        "`preprocessing` must be an ImagePreprocessing layer, a preset name or a serialized "
        f"layer. Received: {preprocessing!r}"
    )


@keras.saving.register_keras_serializable(package="tf_netvlad")
class NetVLADModel(keras.Model):
    """A NetVLAD place-recognition model: float32 RGB images (0..255) in, descriptors out.

    A Functional model built in `__init__`: `ImagePreprocessing` -> backbone -> `NetVLAD` ->
    optional `PCAWhitening`. The NetVLAD and whitening layers always compute in float32, also
    under a mixed-precision policy, so descriptors stay float32.

    Args:
        backbone: a `keras.Model` mapping preprocessed images to `(batch, h, w, D)`, e.g. from
            `tf_netvlad.build_backbone`.
        preprocessing: `ImagePreprocessing` layer or preset name ("caffe", "torch", "tf", "raw").
        num_clusters: K of the NetVLAD layer.
        variant: "v1" (official models) or "v2" (paper), see `NetVLAD`.
        pre_l2: L2-normalise local features before pooling.
        intra_normalize: intra-normalisation of the NetVLAD layer.
        whitening_dim: None, or the output size of an appended `PCAWhitening` layer.
        margin: the ranking-loss margin m used by training (0.1 as in the paper).
        backbone_name: a label recorded in the config (e.g. "vgg16").
        training_image_size: the resize policy the model was trained with ("96x128"; `train`
            records it), or None when unknown. Informational: it does not change the model or its
            fingerprint; `evaluate`, `index`, `localize`, `hloc` and `export` warn when given another
            size.

    Call arguments:
        images: float32 `(batch, height, width, 3)`, RGB in 0..255, any height and width.

    Returns:
        float32 `(batch, descriptor_dim)` with unit L2 norm.

    Training (`fit` on tuples, TensorFlow backend): each element of the dataset is a dict
    `{"query": (B, H, W, 3), "positives": (B, P, H, W, 3), "positive_mask": (B, P),
    "negatives": (B, N, H, W, 3)}` (see `tf_netvlad.training.tuples`). `train_step` runs one forward pass
    over the B·(1 + P + N) images, takes the best positive (min d² over the masked positive set)
    in the graph and minimises the ranking loss of `tf_netvlad.models.losses` with margin `margin`,
    reduced by `loss_reduction` ("sum": per-query sum over negatives, mean over queries;
    "mean_violating": ÷ number of violating triplets, as MATLAB). An optional `negative_mask`
    `(B, N)` in the data masks filler negatives, and `exclude_very_hard` (`set_training_options`)
    re-checks MATLAB's `excludeVeryHard` on the fresh descriptors. Layer regularisation losses are
    added; `weight_decay` > 0 adds the coupled L2 term ½·wd·Σ‖W‖² over trainable kernels (rank
    >= 2; biases excluded), i.e. MATLAB/PyTorch SGD weight decay, to the optimised objective (not
    to the reported `loss`). Loss scaling (`optimizer.scale_loss`) makes `mixed_float16` work;
    under `tf.distribute` every normaliser is global, so the summed replica gradients equal the
    single-device gradient. Metrics (epoch averages): `loss`, `violating_triplets` (fraction of
    (query, negative) pairs with a positive hinge), `positive_d2` (mean d²(q, p*)) and
    `negative_d2` (mean d²(q, n)). Set the options with `set_training_options` before `fit`.
    """

    def __init__(self, backbone, preprocessing="raw", num_clusters=NUM_CLUSTERS, variant=DEFAULT_VARIANT, pre_l2=True,
                 intra_normalize=True, whitening_dim=None, margin=MARGIN, backbone_name=None,
                 training_image_size=None, **kwargs):
        if not isinstance(backbone, keras.Model):
            raise ValueError(f"`backbone` must be a keras.Model. Received: {type(backbone).__name__}")
        if len(backbone.output_shape) != 4:
            raise ValueError(
                "`backbone` must output a local feature map (batch, h, w, D). "
                f"Received output shape {backbone.output_shape}"
            )
        preprocessing_layer = _as_preprocessing(preprocessing)
        # === Functional Model ===
        images = keras.Input(shape=(None, None, 3), name="images", dtype="float32")
        features = backbone(preprocessing_layer(images))
        netvlad = NetVLAD(num_clusters, variant=variant, pre_l2=pre_l2,
                          intra_normalize=intra_normalize, dtype="float32", name="netvlad")
        descriptor = netvlad(features)
        if whitening_dim is not None:
            descriptor = PCAWhitening(whitening_dim, dtype="float32", name="whitening")(descriptor)
        super().__init__(inputs=images, outputs=descriptor, **kwargs)
        # === Config ===
        self.backbone = backbone
        self.preprocessing = preprocessing_layer
        self.num_clusters = int(num_clusters)
        self.variant = variant
        self.pre_l2 = bool(pre_l2)
        self.intra_normalize = bool(intra_normalize)
        self.whitening_dim = None if whitening_dim is None else int(whitening_dim)
        self.margin = float(margin)
        self.backbone_name = backbone_name or backbone.name
        self.training_image_size = (None if training_image_size is None
                                    else format_image_size(parse_image_size(training_image_size)))
        # === Training state (not config) ===
        self.loss_reduction = "sum"
        self.weight_decay = 0.0
        self.exclude_very_hard = False
        self.sparse_backward = False
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.violating_tracker = keras.metrics.Mean(name="violating_triplets")
        self.positive_tracker = keras.metrics.Mean(name="positive_d2")
        self.negative_tracker = keras.metrics.Mean(name="negative_d2")

    @property
    def netvlad(self):
        return self.get_layer("netvlad")

    @property
    def whitening(self):
        return self.get_layer("whitening") if self.whitening_dim is not None else None

    @property
    def descriptor_dim(self):
        return int(self.output_shape[-1])

    def local_features_model(self):
        """A model from images to the backbone's local features (before NetVLAD's preL2)."""
        return keras.Model(self.input, self.netvlad.input, name=f"{self.name}_local_features")

    # ------------------------------------------------------------------ training
    def set_training_options(self, loss_reduction=None, weight_decay=None, exclude_very_hard=None,
                             sparse_backward=None):
        """Sets the loss reduction ("sum" | "mean_violating"), the coupled L2 weight decay, whether
        the step re-checks MATLAB's `excludeVeryHard` with fresh descriptors (`losses.ranking_loss_terms`)
        and whether it back-propagates only through the images whose descriptor has a gradient
        (`sparse_backward`, see `_sparse_tuple_descriptors`; refused for models with layers whose
        training-mode output depends on the batch or on random draws, such as batch normalisation
        or dropout)."""
        if sparse_backward is not None:
            coupled = _batch_or_random_layers(self) if sparse_backward else []
            if coupled:
                raise ValueError(
                    f"`sparse_backward` needs every image's descriptor to depend on that image alone; "
                    f"{self.name!r} has {', '.join(coupled[:3])}: train it without --sparse-backward")
            self.sparse_backward = bool(sparse_backward)
        if exclude_very_hard is not None:
            self.exclude_very_hard = bool(exclude_very_hard)
        if loss_reduction is not None:
            self.loss_reduction = losses.check_reduction(loss_reduction)
        if weight_decay is not None:
            if not weight_decay >= 0:
                raise ValueError(f"`weight_decay` must be >= 0. Received: weight_decay={weight_decay!r}")
            self.weight_decay = float(weight_decay)
        self.train_function = None  # re-trace with the new options
        self.test_function = None

    @property
    def metrics(self):
        return [self.loss_tracker, self.violating_tracker, self.positive_tracker, self.negative_tracker]

    def tuple_descriptors(self, x, training=False):
        """One forward pass over a batch of tuples -> `(query (B, d), positives (B, P, d), negatives (B, N, d))`."""
        images = self._tuple_images(x)
        return self._split_descriptors(x, self._descriptors_in_streams(images, training))

    def _descriptors_in_streams(self, images, training):
        """float32 `self(images)`, computed in `streams.stream_count()` independent parts of the
        batch (`streams.in_streams`: on a CPU configured for it, one part per core); in one part
        in training when a batch normalisation that trains would see the parts' statistics."""
        import tensorflow as tf

        count = 1 if training and _training_batch_norms(self) else streams.stream_count()
        return streams.in_streams(lambda part: tf.cast(self(part, training=training), tf.float32),
                                  images, count)

    @staticmethod
    def _tuple_images(x):
        """The B·(1 + P + N) images of a batch of tuples: queries, then positives, then negatives."""
        import tensorflow as tf

        for key in ("query", "positives", "negatives"):
            if key not in x:
                raise ValueError(
                    "Training data must be dicts with keys 'query', 'positives', 'positive_mask' and "
                    f"'negatives' (see tf_netvlad.training.tuples). Missing {key!r}; received keys {sorted(x)}"
                )
        query = x["query"]
        image_shape = tf.shape(query)[1:]
        return tf.concat([query, tf.reshape(x["positives"], tf.concat([[-1], image_shape], 0)),
                          tf.reshape(x["negatives"], tf.concat([[-1], image_shape], 0))], axis=0)

    @staticmethod
    def _split_descriptors(x, desc):
        """`(B·(1 + P + N), d)` descriptors in `_tuple_images` order -> `(q (B, d), p (B, P, d), n (B, N, d))`."""
        import tensorflow as tf

        batch = tf.shape(x["query"])[0]
        num_pos, num_neg = tf.shape(x["positives"])[1], tf.shape(x["negatives"])[1]
        dim = tf.shape(desc)[1]
        q = desc[:batch]
        p = tf.reshape(desc[batch : batch + batch * num_pos], tf.stack([batch, num_pos, dim]))
        n = tf.reshape(desc[batch + batch * num_pos :], tf.stack([batch, num_neg, dim]))
        return q, p, n

    def _loss_terms(self, x, y_pred):
        """`losses.ranking_loss_terms` of the descriptors `y_pred = (q, p, n)` of the tuples `x`, with
        the model's margin and very-hard rule."""
        query, positives, negatives = y_pred
        return losses.ranking_loss_terms(
            query, positives, negatives, positive_mask=x.get("positive_mask"),
            negative_mask=x.get("negative_mask"), margin=self.margin,
            exclude_very_hard=self.exclude_very_hard,
        )

    def _loss_and_stats(self, x, y_pred):
        """Replica loss (global normalisers, for the gradient) and global sums (for the metrics)."""
        import tensorflow as tf

        local = losses.ranking_loss_sums(self._loss_terms(x, y_pred))
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        total = local if replicas == 1 else context.all_reduce(tf.distribute.ReduceOp.SUM, local)
        normaliser = total["num_queries"] if self.loss_reduction == "sum" else total["num_violating"]
        normaliser = tf.cast(normaliser, tf.float32)
        loss = losses.divide_hinge_sum(local["hinge_sum"], normaliser)  # NaN/inf stay visible
        report = losses.divide_hinge_sum(total["hinge_sum"], normaliser)
        if self.losses:
            regularisation = tf.cast(tf.add_n(self.losses), tf.float32)
            loss += regularisation / replicas
            report += regularisation
        return loss, report, total, replicas

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, _, _, _ = self._loss_and_stats(x, y_pred)
        return loss

    def _weight_decay_term(self, replicas):
        import tensorflow as tf

        kernels = [v for v in self.trainable_variables if len(v.shape) >= 2]
        if not self.weight_decay or not kernels:
            return None
        squares = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in kernels])
        return 0.5 * self.weight_decay * squares / replicas

    def _update_trackers(self, report, total):
        import tensorflow as tf

        queries = total["num_queries"]
        self.loss_tracker.update_state(report, sample_weight=queries)
        fraction = tf.math.divide_no_nan(total["num_violating"], total["num_negatives"])
        self.violating_tracker.update_state(fraction, sample_weight=total["num_negatives"])
        self.positive_tracker.update_state(
            tf.math.divide_no_nan(total["positive_d2_sum"], queries), sample_weight=queries
        )
        self.negative_tracker.update_state(
            tf.math.divide_no_nan(total["negative_d2_sum"], total["num_negatives"]),
            sample_weight=total["num_negatives"],
        )
        results = {m.name: m.result() for m in self.metrics}
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras reduces step outputs across workers with MEAN over axis 0, which needs a batch
            # axis; every replica holds the same global value, so the mean of [v] is v.
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    def _images_with_gradient(self, x, descriptors):
        """Indices (int32, ascending) of the tuple images whose descriptor gets a gradient.

        From `descriptors` of every image (`_tuple_images` order): the ranking loss is a sum of
        hinges, so an image's descriptor has a non-zero gradient only if it is a negative with a
        positive hinge, or the query or a best positive (every positive at the minimum, as the
        gradient of the min is shared between ties) of a query with such a negative. The first
        query is always included, so the list is never empty.
        """
        import tensorflow as tf

        terms = self._loss_terms(x, self._split_descriptors(x, descriptors))
        hinged = terms["hinge"] > 0
        active = tf.reduce_any(hinged, axis=1)
        # masked positives sit at a large constant in `positive_d2`, never at the minimum
        best = (terms["positive_d2"] == tf.expand_dims(terms["best_positive_d2"], 1)) & tf.expand_dims(active, 1)
        first = tf.one_hot(0, tf.shape(active)[0], on_value=True, off_value=False)
        flags = tf.concat([active | first, tf.reshape(best, [-1]), tf.reshape(hinged, [-1])], axis=0)
        return tf.cast(tf.where(flags)[:, 0], tf.int32)

    def _sparse_tuple_descriptors(self, x):
        """`tuple_descriptors(x, training=True)` whose gradient reaches only the images that have one.

        One pass over every image outside the gradient tape finds them (`_images_with_gradient`);
        the caller's tape then records a second pass over those images only, scattered into the
        first pass's descriptors. The loss and its gradient are those of the full pass (the images
        left out have a zero gradient), at the cost of one forward pass plus the forward and
        backward passes of the images that train: less than the full forward and backward passes
        when fewer than about 2/3 of the images train (benchmarks/RESULTS.md).
        """
        import tensorflow as tf

        images = self._tuple_images(x)
        constant = tf.stop_gradient(self._descriptors_in_streams(images, training=True))
        rows = self._images_with_gradient(x, constant)
        fresh = self._descriptors_in_streams(tf.gather(images, rows), training=True)
        return self._split_descriptors(x, tf.tensor_scatter_nd_update(constant, rows[:, None], fresh))

    def _gradients(self, x, sparse):
        """(gradients of the trainable variables, objective, reported loss, global sums) of one batch."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            if sparse:
                y_pred = self._sparse_tuple_descriptors(x)
            else:
                y_pred = self.tuple_descriptors(x, training=True)
            loss, report, total, replicas = self._loss_and_stats(x, y_pred)
            objective = loss
            decay = self._weight_decay_term(replicas)
            if decay is not None:
                objective = objective + decay
            scaled = self.optimizer.scale_loss(objective)
        return tape.gradient(scaled, self.trainable_variables), objective, report, total

    def train_step(self, data):
        import tensorflow as tf

        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        context = tf.distribute.get_replica_context()
        if self.sparse_backward and (context is None or context.num_replicas_in_sync == 1):
            # The sparse step costs one more forward pass, repaid when few images train: it runs
            # while the refresh cycle's fraction of violating negatives so far is below
            # SPARSE_MAX_VIOLATING (the first step of a cycle, with none measured yet, runs it).
            use_sparse = self.violating_tracker.result() < SPARSE_MAX_VIOLATING
            gradients, objective, report, total = tf.cond(
                use_sparse, lambda: self._gradients(x, sparse=True), lambda: self._gradients(x, sparse=False))
        else:
            # Under several replicas every replica must run the same collectives: no branch.
            gradients, objective, report, total = self._gradients(x, sparse=self.sparse_backward)
        # Keras runs one more step call at the end of a dataset of unknown length; without this
        # dependency the optimizer's iteration counter could be incremented before the failing
        # `get_next` stops it (a race), so the counter would drift from the real number of updates.
        with tf.control_dependencies([objective]):
            self.optimizer.apply(gradients, variables)
        return self._update_trackers(report, total)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy Keras' TF trainer reads a first batch at every `fit` and
        # reduces it across replicas only to build unbuilt state; that reduction of our dict inputs
        # fails under MultiWorkerMirroredStrategy. Nothing to build (train() builds the model and
        # the optimizer): skip it, as Keras' `_symbolic_build` would do nothing either.
        built = (all(layer.built for layer in self._flatten_layers())
                 and (self.optimizer is None or self.optimizer.built)
                 and getattr(self, "_compile_loss", None) is None
                 and getattr(self, "_compile_metrics", None) is None)
        if not built:
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def test_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self.tuple_descriptors(x, training=False)
        _, report, total, _ = self._loss_and_stats(x, y_pred)
        return self._update_trackers(report, total)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "preprocessing": keras.layers.serialize(self.preprocessing),
            "num_clusters": self.num_clusters,
            "variant": self.variant,
            "pre_l2": self.pre_l2,
            "intra_normalize": self.intra_normalize,
            "whitening_dim": self.whitening_dim,
            "margin": self.margin,
            "backbone_name": self.backbone_name,
            **({} if self.training_image_size is None else {"training_image_size": self.training_image_size}),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # Keras's deserialisation consumes the nested dicts it reads
        config["backbone"] = keras.layers.deserialize(config["backbone"], custom_objects=custom_objects)
        config["preprocessing"] = keras.layers.deserialize(config["preprocessing"], custom_objects=custom_objects)
        return cls(**config)


def _batch_or_random_layers(model):
    """Names and classes of the layers whose training-mode output depends on the rest of the batch
    (batch normalisation) or on random draws (dropout, noise)."""
    kinds = (keras.layers.BatchNormalization, keras.layers.Dropout, keras.layers.SpatialDropout1D,
             keras.layers.SpatialDropout2D, keras.layers.SpatialDropout3D, keras.layers.GaussianDropout,
             keras.layers.GaussianNoise, keras.layers.AlphaDropout)
    return [f"{layer.name} ({type(layer).__name__})" for layer in model._flatten_layers()
            if isinstance(layer, kinds)]


def _training_batch_norms(model):
    """The trainable batch normalisations of `model` (in training they normalise by the batch's
    statistics; a frozen one uses its moving statistics, image by image)."""
    return [layer for layer in model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def _multi_worker(strategy):
    """True under a MultiWorkerMirroredStrategy with more than one worker."""
    import tensorflow as tf

    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


def build_model(backbone="tiny", weights=None, trainable_from="default", preprocessing=None,
                num_clusters=NUM_CLUSTERS, variant=DEFAULT_VARIANT, pre_l2=True, intra_normalize=True,
                whitening_dim=None, margin=MARGIN, name=None):
    """Builds a `NetVLADModel` from keyword arguments.

    `backbone` is a name from `tf_netvlad.BACKBONES` (or a ready `keras.Model`); `weights` is
    None, "imagenet" or a weights file (see `build_backbone`); `preprocessing` defaults to what
    the backbone's ImageNet weights expect. The NetVLAD layer still needs its k-means
    initialisation (`tf_netvlad.initialize_netvlad`).
    """
    if isinstance(backbone, keras.Model):
        net, backbone_name = backbone, backbone.name
        preprocessing = preprocessing or "raw"
    else:
        net = backbones_lib.build_backbone(backbone, weights=weights, trainable_from=trainable_from)
        backbone_name = backbone
        preprocessing = preprocessing or backbones_lib.default_preprocessing(backbone)
    return NetVLADModel(
        net,
        preprocessing=preprocessing,
        num_clusters=num_clusters,
        variant=variant,
        pre_l2=pre_l2,
        intra_normalize=intra_normalize,
        whitening_dim=whitening_dim,
        margin=margin,
        backbone_name=backbone_name,
        name=name or f"{backbone_name}_netvlad{num_clusters}",
    )


def with_whitening(model, kernel, bias, num_components=None):
    """A copy of `model` with a `PCAWhitening` layer set from `fit_pca_whitening` output.

    `num_components` (default: all columns of `kernel`) keeps the first outputs only, which is
    the reference's dimensionality reduction (`cropToDim`). An existing whitening is replaced.
    """
    num_components = int(num_components or kernel.shape[1])
    config = dict(model.get_config(), whitening_dim=num_components)
    new = NetVLADModel.from_config(config)
    new.backbone.set_weights(model.backbone.get_weights())
    new.netvlad.set_weights(model.netvlad.get_weights())
    new.whitening.set_whitening(kernel, bias)
    return new
