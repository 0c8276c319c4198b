// One clustering of the merged embeddings; the workflow includes it twice, as CLUSTER_KMEANS and
// CLUSTER_SPECTRAL (method kmeans or spectral: `subtomo-cluster METHOD` = `subtomo-embed METHOD`).
process CLUSTER {
    tag "all tomograms"
    label 'process_medium'

    input:
    val method
    tuple path(embeddings), path(table)
    path stars  // <stem>_instance_regions.star of predict: the clustered STAR files keep their columns
    path tomograms, stageAs: 'data/*'  // cluster galleries (only when the figures are asked for)
    path masks, stageAs: 'masks/*'     // cluster label volumes <stem>_clusters_<method>.mrc
    val settings

    output:
    path "out/${method}_clusters.h5", emit: clusters
    path "out/*", optional: true, emit: results
    path "vis/*", optional: true, emit: figures
    tuple val("${task.process}"), eval('subtomo-embed --version'), emit: versions  // main.nf collects them

    script:
    def args = task.ext.args ?: ''
    """
    subtomo-cluster ${method} \\
        --input-dir . \\
        --output-dir out \\
        --vis-dir vis \\
        --set 'data_folder=data' \\
        --set 'instances_mask_folder=masks' \\
        ${settings} \\
        ${args}
    """

    stub:
    """
    mkdir -p out vis
    touch out/${method}_clusters.h5 vis/${method}.stub.png
    """
}
