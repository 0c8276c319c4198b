process VISUALIZE {
    tag "all tomograms"
    label 'process_medium'

    input:
    tuple path(embeddings), path(table)
    path clusters                      // kmeans_clusters.h5, spectral_clusters.h5: projections coloured by them
    path stars                         // each tomogram's regions STAR: the explorer's selection downloads its rows
    path tomograms, stageAs: 'data/*'  // particle thumbnails
    path masks, stageAs: 'masks/*'
    val settings

    output:
    path "out/*", optional: true, emit: results
    path "vis/*", optional: true, emit: figures
    tuple val("${task.process}"), eval('subtomo-embed --version'), emit: versions  // main.nf collects them

    script:
    def args = task.ext.args ?: ''
    """
    subtomo-visualize \\
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
    touch out/visualize.stub vis/visualize.stub.png
    """
}
