process CLUSTER_SPECTRAL {
    tag "all tomograms"
    label 'process_medium'

    input:
    tuple path(embeddings), path(table)
    path stars  // <stem>_instance_regions.star of predict: the clustered STAR files keep their columns
    path tomograms, stageAs: 'data/*'  // cluster galleries (only when the figures are asked for)
    path masks, stageAs: 'masks/*'     // cluster label volumes <stem>_clusters_<method>.mrc
    val settings

    output:
    path "out/spectral_clusters.h5", emit: clusters
    path "out/*", optional: true, emit: results
    path "vis/*", optional: true, emit: figures
    path "versions.yml", emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    subtomo-spectral \\
        --input-dir . \\
        --output-dir out \\
        --vis-dir vis \\
        --set 'data_folder=data' \\
        --set 'instances_mask_folder=masks' \\
        ${settings} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p out vis
    touch out/spectral_clusters.h5 vis/spectral.stub.png
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        subtomo-embed: \$(subtomo-embed --version | sed 's/subtomo-embed //')
    END_VERSIONS
    """
}
