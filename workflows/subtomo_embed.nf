/*
 * The analysis graph, top to bottom:
 *   tomograms + masks -> EXTRACT_PATCHES (CPU, per tomogram) -> EMBED (GPU, per tomogram)
 *   or, with params.picks, tomograms + picks -> PREDICT_CENTERS (GPU, per tomogram)
 *   -> MERGE_EMBEDDINGS (all) -> VISUALIZE, CLUSTER_KMEANS, CLUSTER_SPECTRAL
 *
 * Each process receives only the settings that change its result, as `--set key=value`
 * flags (a `val` input), so `-resume` re-runs only what a change touches.
 */

include { EXTRACT_PATCHES  } from '../modules/local/extract_patches/main'
include { EMBED            } from '../modules/local/embed/main'
include { PREDICT_CENTERS  } from '../modules/local/predict_centers/main'
include { MERGE_EMBEDDINGS } from '../modules/local/merge_embeddings/main'
include { VISUALIZE        } from '../modules/local/visualize/main'
include { CLUSTER_KMEANS   } from '../modules/local/cluster_kmeans/main'
include { CLUSTER_SPECTRAL } from '../modules/local/cluster_spectral/main'

// A nested param with a default, so a params file may give only part of a section.
def setting(String dotted, fallback) {
    def missing = new Object()
    def value = dotted.tokenize('.').inject(params) { node, key ->
        (node instanceof Map && node.containsKey(key)) ? node[key] : missing
    }
    return (value.is(missing) || value == null) ? fallback : value
}

// `--set key=value` flags for the CLI, values written as YAML (JSON is YAML).
def flags(Map settings) {
    return settings.collect { key, value -> "--set '${key}=${groovy.json.JsonOutput.toJson(value)}'" }.join(' ')
}

def stemOf(String name, String extension) {
    return name.endsWith(extension) ? name.substring(0, name.length() - extension.length()) : name
}

workflow SUBTOMO_EMBED {
    main:
    def extension = setting('file_extension', '.mrc')
    def suffix = params.instances
        ? "_min-${params.instances.min_center_distance}_max-${params.instances.max_center_distance}" : ''
    def wanted = setting('test_files', null)

    def extractFlags = flags([
        file_extension                 : extension,
        min_particle_size              : setting('min_particle_size', null),
        max_particle_size              : setting('max_particle_size', null),
        masking_type                   : setting('masking_type', 1),
        expand_labels                  : setting('expand_labels', 0),
        'parameters.data.patch_size'   : setting('parameters.data.patch_size', [64, 64, 64]),
        'parameters.data.min'          : setting('parameters.data.min', 0),
        'parameters.data.max'          : setting('parameters.data.max', 1),
        'parameters.data.mean'         : setting('parameters.data.mean', 0),
        'parameters.data.std'          : setting('parameters.data.std', 1),
    ])
    def embedFlags = flags([
        contrastive               : setting('contrastive', true),
        'parameters.network.dim'  : setting('parameters.network.dim', 1024),
        mixed_precision           : setting('mixed_precision', false),
    ])
    def centersFlags = flags([
        file_extension                 : extension,
        centers_patch_size             : setting('centers_patch_size', null),
        'centers.units'                : setting('centers.units', 'auto'),
        'centers.origin'               : setting('centers.origin', 'auto'),
        'centers.voxel_size'           : setting('centers.voxel_size', null),
        'centers.picks_voxel_size'     : setting('centers.picks_voxel_size', null),
        'centers.tomogram_column'      : setting('centers.tomogram_column', null),
        'centers.mask_radius'          : setting('centers.mask_radius', null),
        'centers.border'               : setting('centers.border', 'pad'),
        'parameters.data.patch_size'   : setting('parameters.data.patch_size', [64, 64, 64]),
        'parameters.data.min'          : setting('parameters.data.min', 0),
        'parameters.data.max'          : setting('parameters.data.max', 1),
        'parameters.data.mean'         : setting('parameters.data.mean', 0),
        'parameters.data.std'          : setting('parameters.data.std', 1),
        contrastive                    : setting('contrastive', true),
        'parameters.network.dim'       : setting('parameters.network.dim', 1024),
        mixed_precision                : setting('mixed_precision', false),
    ])
    def kmeansFlags = flags([
        seed                               : setting('seed', 0),
        'clustering_kmeans.num_clusters'   : setting('clustering_kmeans.num_clusters', 6),
        'clustering_kmeans.visualization'  : setting('clustering_kmeans.visualization', true),
    ])
    def spectralFlags = flags([
        seed                                         : setting('seed', 0),
        'clustering_spectral.num_clusters'           : setting('clustering_spectral.num_clusters', 6),
        'clustering_spectral.estimate_num_clusters'  : setting('clustering_spectral.estimate_num_clusters', false),
        'clustering_spectral.n_neighbors'            : setting('clustering_spectral.n_neighbors', 10),
        'clustering_spectral.visualization'          : setting('clustering_spectral.visualization', true),
    ])
    def visualizeFlags = flags([
        seed                                     : setting('seed', 0),
        'visualization.distance'                 : setting('visualization.distance', 'euclidean'),
        'visualization.pca_components'           : setting('visualization.pca_components', null),
        'visualization.visualize_umap'           : setting('visualization.visualize_umap', true),
        'visualization.3d_umap'                  : setting('visualization.3d_umap', false),
        'visualization.max_plot_points'          : setting('visualization.max_plot_points', 20000),
    ])

    def checkpoint = file(params.trained_model, checkIfExists: true)
    ch_tomograms = channel.fromPath("${params.data_folder}/*${extension}")
        .filter { tomogram -> !wanted || tomogram.name in wanted }

    if (params.picks) {
        // particles from picks: one file for all tomograms or a folder of per-tomogram files
        PREDICT_CENTERS(
            ch_tomograms.map { tomogram -> [[id: stemOf(tomogram.name, extension)], tomogram] },
            file(params.picks, checkIfExists: true), checkpoint, centersFlags)
        ch_embedded = PREDICT_CENTERS.out
        ch_embed_versions = PREDICT_CENTERS.out.versions.first()
    } else {
        // one (meta, tomogram, mask, regions table or []) per tomogram
        def maskFolder = file(params.instances_mask_folder)
        ch_inputs = ch_tomograms
            .map { tomogram ->
                def stem = stemOf(tomogram.name, extension)
                def h5 = maskFolder.resolve("${stem}_instance_preds${suffix}.h5")
                def mrc = maskFolder.resolve("${stem}${extension}")
                def mask = h5.exists() ? h5 : (mrc.exists() ? mrc : null)
                if (mask == null) {
                    if (setting('skip_missing_masks', false)) {
                        log.warn("${stem}: no instance mask in ${maskFolder}; skipped")
                        return null
                    }
                    error("${stem}: no instance mask in ${maskFolder} (expected ${h5.name} or ${mrc.name})")
                }
                def regions = maskFolder.resolve("${stem}_instance_regions${suffix}.csv")
                [[id: stem], tomogram, mask, regions.exists() ? regions : []]
            }
        EXTRACT_PATCHES(ch_inputs, extractFlags)
        EMBED(EXTRACT_PATCHES.out.patches, checkpoint, embedFlags)
        ch_embedded = EMBED.out
        ch_embed_versions = EXTRACT_PATCHES.out.versions.first().mix(EMBED.out.versions.first())
    }

    ch_per_tomogram = ch_embedded.embeddings
        .mix(ch_embedded.labels, ch_embedded.regions)
        .map { _meta, f -> f }
        .collect()
    // each tomogram's regions STAR: the clustered STAR files are its rows plus rlnClass
    ch_stars = ch_embedded.star.map { _meta, f -> f }.collect()
    MERGE_EMBEDDINGS(ch_per_tomogram, flags([clustering_files: setting('clustering_files', null)]))

    CLUSTER_KMEANS(MERGE_EMBEDDINGS.out.merged, ch_stars, kmeansFlags)
    CLUSTER_SPECTRAL(MERGE_EMBEDDINGS.out.merged, ch_stars, spectralFlags)
    VISUALIZE(MERGE_EMBEDDINGS.out.merged, visualizeFlags)

    ch_versions = ch_embed_versions
        .mix(MERGE_EMBEDDINGS.out.versions, CLUSTER_KMEANS.out.versions,
             CLUSTER_SPECTRAL.out.versions, VISUALIZE.out.versions)

    emit:
    embeddings = MERGE_EMBEDDINGS.out.merged
    versions   = ch_versions
}
